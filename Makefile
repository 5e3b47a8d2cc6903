# Makefile -- builds the circle engine (libcircle), the circled daemon, the
# tests and the benchmarks. `make run` and `make test` do all the set-up on a
# fresh Debian 12 machine (see the deps target).

PREFIX    ?= /usr/local
CC        ?= cc
PYTHON    ?= python3
BUILD     ?= build
SAN       ?= 0

CFLAGS    ?= -O2 -g
CFLAGS    += -std=c11 -Wall -Wextra -Wshadow -Wno-unused-parameter \
             -D_GNU_SOURCE -Iinclude -Isrc -pthread -fvisibility=hidden
LDLIBS_ENGINE := -lopenblas -lm -lpthread
LDLIBS_GRPC   := -lgrpc -lgpr -lprotobuf-c
LDLIBS_SERVER := -lmicrohttpd -lcjson -lz $(LDLIBS_GRPC) $(LDLIBS_ENGINE)

ifeq ($(SAN),1)
BUILD     := build/san
CFLAGS    += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
             -fno-sanitize-recover=undefined
LDFLAGS   += -fsanitize=address,undefined
endif
# SAN=thread: ThreadSanitizer (`make tsan`). No target_clones: their ifunc
# resolvers run before the TSan runtime is up and crash the program.
ifeq ($(SAN),thread)
BUILD     := build/tsan
CFLAGS    += -O1 -fsanitize=thread -fno-omit-frame-pointer -DCIRCLE_NO_CLONES
LDFLAGS   += -fsanitize=thread
endif

# The engine: no HTTP, no JSON. Everything else in src/ is the service.
ENGINE_SRCS := src/status.c src/config.c src/loss.c src/pool.c src/blas.c
SERVER_SRCS := $(filter-out $(ENGINE_SRCS) src/main.c,$(wildcard src/*.c))
ENGINE_OBJS := $(ENGINE_SRCS:src/%.c=$(BUILD)/obj/%.o)
ENGINE_PIC  := $(ENGINE_SRCS:src/%.c=$(BUILD)/pic/%.o)
SERVER_OBJS := $(SERVER_SRCS:src/%.c=$(BUILD)/obj/%.o)

# The gRPC messages: C made by protobuf-c-compiler from the committed
# proto/*.proto at build time (never committed, never edited).
GEN_DIR   := build/gen
PROTOS    := $(wildcard proto/*.proto)
GEN_SRCS  := $(PROTOS:proto/%.proto=$(GEN_DIR)/%.pb-c.c)
GEN_HDRS  := $(GEN_SRCS:.c=.h)
GEN_OBJS  := $(GEN_SRCS:$(GEN_DIR)/%.c=$(BUILD)/obj/gen/%.o)
SERVER_OBJS += $(GEN_OBJS)
CFLAGS    += -I$(GEN_DIR)
# Kept after the build (make would delete them as intermediates, then make
# them again next time).
.SECONDARY: $(GEN_SRCS) $(GEN_HDRS)

# Engine tests link the engine alone; the others link the service and curl.
ENGINE_TESTS := $(wildcard tests/test_loss.c tests/test_retrieval.c tests/test_pool.c tests/test_blas.c tests/test_config.c)
SERVER_TESTS := $(filter-out $(ENGINE_TESTS),$(wildcard tests/test_*.c))
ENGINE_UTILS := $(wildcard tests/util_engine_*.c)
SERVER_UTILS := $(filter-out $(ENGINE_UTILS),$(wildcard tests/util_*.c))
TEST_BINS    := $(ENGINE_TESTS:tests/%.c=$(BUILD)/tests/%) \
                $(SERVER_TESTS:tests/%.c=$(BUILD)/tests/%)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm)

# One venv for both builds: SAN=1 reuses build/venv.
VENV      := $(if $(filter 1,$(SAN)),build,$(BUILD))/venv
VENV_PY   := $(CURDIR)/$(VENV)/bin/python

.PHONY: all run test test-c test-py bench golden golden-retrieval install clean deps deps-c deps-test deps-py fuzz soak
.DEFAULT_GOAL := all

all: $(BUILD)/circled $(BUILD)/libcircle.a $(BUILD)/libcircle.so

# ---- dependencies -----------------------------------------------------------
# What building and the C tests need (the Docker build stage uses these)...
APT_PKGS := build-essential pkg-config libopenblas-dev libmicrohttpd-dev \
            libcjson-dev zlib1g-dev check libcurl4-openssl-dev \
            libgrpc-dev libprotobuf-c-dev protobuf-c-compiler
# ...and what only the Python tests need: the venv, a real Prometheus server
# scraping /metrics, headless Chromium for /dashboard.
TEST_APT_PKGS := python3 python3-venv python3-pip curl prometheus chromium

deps: deps-c deps-py

deps-c:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "deps: missing Debian packages. Run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(VENV)/.stamp: tests/requirements.txt
	@mkdir -p $(BUILD)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	@touch $@

deps-test: deps-c
	@$(MAKE) --no-print-directory deps-c APT_PKGS="$(TEST_APT_PKGS)"

deps-py: deps-c deps-test $(VENV)/.stamp

# ---- build ------------------------------------------------------------------
$(GEN_DIR)/%.pb-c.c $(GEN_DIR)/%.pb-c.h: proto/%.proto | deps-c
	@mkdir -p $(GEN_DIR)
	protoc-c --proto_path=proto --c_out=$(GEN_DIR) $<

$(BUILD)/obj/gen/%.o: $(GEN_DIR)/%.c $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: src/%.c | deps-c $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The loss kernels want the vectorizer (-O3; see CIRCLE__HOT in loss.c) and
# FMA: -std=c11 turns contraction off, -ffp-contract=fast turns it back on
# for this file alone (the clones with FMA may then differ from the
# baseline clone in the last bits; the thread count never changes a bit).
$(BUILD)/obj/loss.o $(BUILD)/pic/loss.o: CFLAGS += -O3 -fno-trapping-math -ffp-contract=fast
# The input checks (config.c) scan every number of a request: vectorized too.
$(BUILD)/obj/config.o $(BUILD)/pic/config.o: CFLAGS += -O3

# The dashboard page is embedded with .incbin (see dashboard.c).
$(BUILD)/obj/dashboard.o: src/dashboard.html

$(BUILD)/pic/%.o: src/%.c | deps-c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -MMD -MP -c $< -o $@

$(BUILD)/libcircle.a: $(ENGINE_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libcircle.so: $(ENGINE_PIC)
	$(CC) -shared -Wl,-soname,libcircle.so.0 $(LDFLAGS) -o $@ $^ $(LDLIBS_ENGINE)

$(BUILD)/circled: $(BUILD)/obj/main.o $(SERVER_OBJS) $(BUILD)/libcircle.a
	$(CC) $(LDFLAGS) -o $@ $(BUILD)/obj/main.o $(SERVER_OBJS) $(BUILD)/libcircle.a $(LDLIBS_SERVER)

$(BUILD)/tests/test_%: tests/test_%.c $(BUILD)/libcircle.a $(SERVER_OBJS) $(ENGINE_UTILS) $(SERVER_UTILS) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	@if echo " $(ENGINE_TESTS) " | grep -q " $< "; then \
	  echo "$(CC) ... $< (engine)"; \
	  $(CC) $(CFLAGS) -Itests $(LDFLAGS) -o $@ $< $(ENGINE_UTILS) $(BUILD)/libcircle.a $(CHECK_LIBS) $(LDLIBS_ENGINE); \
	else \
	  echo "$(CC) ... $< (service)"; \
	  $(CC) $(CFLAGS) -Itests $(LDFLAGS) -o $@ $< $(SERVER_UTILS) $(SERVER_OBJS) $(BUILD)/libcircle.a $(CHECK_LIBS) -lcurl $(LDLIBS_SERVER); \
	fi

$(BUILD)/bench/%: bench/%.c bench/bench_util.h $(BUILD)/libcircle.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libcircle.a $(LDLIBS_ENGINE)

# bench_codec times the codecs too: it links the service objects.
$(BUILD)/bench/bench_codec: bench/bench_codec.c bench/bench_util.h $(BUILD)/libcircle.a $(SERVER_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(SERVER_OBJS) $(BUILD)/libcircle.a $(LDLIBS_SERVER)

-include $(wildcard $(BUILD)/obj/*.d $(BUILD)/pic/*.d)

# ---- run, test, bench -------------------------------------------------------
run: all
	$(BUILD)/circled --bind 0.0.0.0 --port 8080

# Every check binary; the engine's golden tests once more under OpenBLAS'
# generic kernels to show the results do not depend on the kernel chosen,
# and once more with the engine's C loops in place of its AVX-512 kernels
# (CIRCLE_KERNELS=c), so both stay checked against Keras on any machine.
# Every suite runs even when an earlier one fails; the target fails at the
# end, naming the suites that failed.
test-c: all $(TEST_BINS)
	@export CIRCLED_BIN=$(CURDIR)/$(BUILD)/circled CIRCLE_GOLDEN_DIR=$(CURDIR)/tests/golden; \
	failed=""; \
	for t in $(TEST_BINS); do echo "== $$t"; $$t || failed="$$failed $${t##*/}"; done; \
	if [ -x $(BUILD)/tests/test_loss ]; then \
	  echo "== $(BUILD)/tests/test_loss (OPENBLAS_CORETYPE=Prescott)"; \
	  OPENBLAS_CORETYPE=Prescott $(BUILD)/tests/test_loss || failed="$$failed test_loss(Prescott)"; \
	  echo "== $(BUILD)/tests/test_loss (CIRCLE_KERNELS=c)"; \
	  CIRCLE_KERNELS=c $(BUILD)/tests/test_loss || failed="$$failed test_loss(CIRCLE_KERNELS=c)"; fi; \
	if [ -n "$$failed" ]; then echo "test-c: failed:$$failed"; exit 1; fi

test-py: all deps-py
	@if ls tests/py/test_*.py >/dev/null 2>&1; then \
	  CIRCLED_BIN=$(CURDIR)/$(BUILD)/circled KERAS_BACKEND=jax $(VENV_PY) -m pytest -q tests/py; \
	fi

# SAN=1 runs the check binaries under ASan + UBSan (LSan included); the
# Python tests always run against the normal build.
test: deps
	$(MAKE) test-c
	$(MAKE) test-py SAN=0

golden: deps-py
	KERAS_BACKEND=jax $(VENV_PY) tests/golden/generate.py tests/golden

# `make golden-retrieval`: the retrieval figures' golden cases, from
# pytorch-metric-learning's AccuracyCalculator (in the bench venv, which has
# torch): tests/golden/retrieval/retrieval.json, read by
# tests/py/test_retrieval.py.
golden-retrieval: deps-bench
	$(BENCH_VENV)/bin/python tests/golden/retrieval_generate.py \
	  tests/golden/retrieval/retrieval.json

bench: all $(BUILD)/bench/bench_loss
	$(BUILD)/bench/bench_loss

# `make bench-compare`: circled against Keras 3 + JAX and PyTorch on this
# machine (bench/compare/compare.py -> build/bench/compare.md), small
# requests under wrk (small.md), gRPC against OIP binary at 64 x 128 and
# 4096 x 512 (grpc.md), JSON against binary (codecs.md). The
# frameworks live in their own venv, never in the test venv; torch from PyPI
# is the CUDA-bundled wheel (the venv is about 6 GB), run on the CPU only.
BENCH_VENV   := build/bench-venv
COMPARE_ARGS ?=
.PHONY: bench-compare deps-bench
$(BENCH_VENV)/.stamp: bench/compare/requirements.txt
	@mkdir -p build
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/compare/requirements.txt
	@touch $@

deps-bench: $(BENCH_VENV)/.stamp
	@$(MAKE) --no-print-directory deps-c APT_PKGS="wrk"

bench-compare: all $(BUILD)/bench/bench_codec deps-bench
	$(BENCH_VENV)/bin/python bench/compare/compare.py --circled $(BUILD)/circled \
	  --lib $(BUILD)/libcircle.so $(COMPARE_ARGS)
	$(BENCH_VENV)/bin/python bench/compare/compare.py --circled $(BUILD)/circled \
	  --lib $(BUILD)/libcircle.so --only engine,circled_oip,circled_grpc \
	  --sizes 64x128,4096x512 --out build/bench/grpc.md
	$(BENCH_VENV)/bin/python bench/compare/grpc_vs_http.py --circled $(BUILD)/circled
	$(BENCH_VENV)/bin/python bench/compare/small_requests.py --circled $(BUILD)/circled
	$(BENCH_VENV)/bin/python bench/compare/codecs_memory.py --circled $(BUILD)/circled \
	  --bench-codec $(BUILD)/bench/bench_codec

# `make bench-peers`: circled side by side with the servers users would deploy
# instead, Triton Inference Server (through PyTriton, whose wheel ships
# tritonserver) and MLServer, each serving model `circle` on loopback
# (bench/peers/peers.py -> build/bench/peers.md; method in docs/peers.md).
# Each peer has its own venv. The Triton one, which also runs the driver, is
# made with Debian's /usr/bin/python3: PyTriton's Python stub links Debian's
# libpython3.11. wrk and h2load (nghttp2-client) come from apt.
PEERS_TRITON_VENV   := build/peers-triton-venv
PEERS_MLSERVER_VENV := build/peers-mlserver-venv
PEERS_ARGS ?=
.PHONY: bench-peers deps-peers
# build/peers-triton-venv from requirements-triton.txt, and so on.
build/peers-%-venv/.stamp: bench/peers/requirements-%.txt
	@mkdir -p build
	/usr/bin/python3 -m venv $(@D)
	$(@D)/bin/pip install -q --upgrade pip
	$(@D)/bin/pip install -q -r $<
	@touch $@

deps-peers:
	@$(MAKE) --no-print-directory deps-c APT_PKGS="python3-venv wrk nghttp2-client"
	@$(MAKE) --no-print-directory $(PEERS_TRITON_VENV)/.stamp $(PEERS_MLSERVER_VENV)/.stamp

bench-peers: all deps-peers
	$(PEERS_TRITON_VENV)/bin/python bench/peers/peers.py --circled $(BUILD)/circled \
	  --mlserver-venv $(PEERS_MLSERVER_VENV) $(PEERS_ARGS)

# ---- fuzzing ----------------------------------------------------------------
# libFuzzer harnesses (fuzz/fuzz_*.c) built with Debian's clang under ASan
# and UBSan. `make fuzz FUZZ_SECONDS=N` runs each for N seconds over its
# committed seeds (fuzz/corpus/<name>) and what earlier runs found
# (build/fuzz/corpus/<name>); a crash stops the run and is saved in
# build/fuzz/crashes/. Full logs: build/fuzz/<name>.log.
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build/fuzz
FUZZ_CFLAGS  := -std=c11 -g -O1 -D_GNU_SOURCE -Iinclude -Isrc -pthread \
                -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# The codecs and what they use: the service minus the server itself
# (src/http.c and its src/http_*.c, which need libmicrohttpd).
FUZZ_SRCS    := $(filter-out src/http%.c src/grpc_server.c src/metrics.c src/dashboard.c,$(SERVER_SRCS)) \
                src/status.c src/config.c $(GEN_SRCS)
FUZZERS      := $(patsubst fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard fuzz/fuzz_*.c))

.PHONY: deps-fuzz
deps-fuzz:
	@$(MAKE) --no-print-directory deps-c APT_PKGS="clang-14 libclang-rt-14-dev"

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz_util.h $(FUZZ_SRCS) $(wildcard src/*.h) | deps-c deps-fuzz
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(GEN_DIR) -o $@ $< $(FUZZ_SRCS) -lcjson -lz -lprotobuf-c -lm

fuzz: $(FUZZERS)
	@set -e; mkdir -p $(FUZZ_BUILD)/crashes; for f in $(FUZZERS); do \
	  h=$${f##*/}; mkdir -p $(FUZZ_BUILD)/corpus/$$h; \
	  echo "== $$h: $(FUZZ_SECONDS) s"; \
	  if ! nice -n 10 $$f -max_total_time=$(FUZZ_SECONDS) -max_len=16384 \
	       -timeout=10 -print_final_stats=1 \
	       -artifact_prefix=$(FUZZ_BUILD)/crashes/$$h- \
	       $(FUZZ_BUILD)/corpus/$$h fuzz/corpus/$$h \
	       > $(FUZZ_BUILD)/$$h.log 2>&1; then \
	    tail -n 60 $(FUZZ_BUILD)/$$h.log; echo "fuzz: $$h failed"; exit 1; fi; \
	  grep -aE '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
	    $(FUZZ_BUILD)/$$h.log; \
	  grep -aE '^#[0-9]+[[:space:]]+DONE' $(FUZZ_BUILD)/$$h.log | tail -n 1; \
	done

# ---- soak and valgrind ------------------------------------------------------
# `make soak`: SOAK_SECONDS of mixed valid, invalid and truncated requests
# over both protocols at 64 connections and 8 gRPC clients against a fresh
# circled; fails on a
# 5xx, a wrong answer, a crash or 10% RSS growth (tests/load/soak.py).
SOAK_SECONDS ?= 60
# The gRPC clients of the soak need grpcio: it runs in the test venv.
soak: all deps-py
	$(VENV_PY) tests/load/soak.py --duration $(SOAK_SECONDS) --circled $(BUILD)/circled \
	  --json-out $(BUILD)/soak.json

# `make valgrind`: memcheck over every check binary (normal build; check
# forks each test and valgrind follows the fork) but test_http, whose
# subject runs in another process and whose cases time it, then over
# circled itself while a short soak drives it at 8 connections, with a
# bearer token so that the auth paths run too. Any error or leak fails.
VALGRIND := valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
            --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 -q
VALGRIND_SECONDS ?= 20
# `make tsan`: the suites that run threads against each other -- the engine
# pool (test_pool: jobs, short jobs, cancellation; test_loss: computations
# on several threads; test_retrieval: the retrieval figures on several
# threads), the metrics registry (test_metrics) and the daemon
# itself (test_http: concurrent requests, suspend/resume, the reaper,
# drains) -- built with ThreadSanitizer, circled included, then the gRPC
# tests (tests/py/test_grpc.py) against the TSan circled and a 20 s soak of
# it at 64 connections and 8 gRPC clients. Any report fails; reports inside
# gRPC core and abseil, which are not built with TSan, are suppressed
# (tests/tsan.supp says why).
TSAN_TESTS := test_pool test_loss test_retrieval test_metrics test_http
.PHONY: tsan
tsan: deps-c deps-py
	$(MAKE) SAN=thread all $(TSAN_TESTS:%=build/tsan/tests/%)
	@rm -rf build/tsan/reports && mkdir -p build/tsan/reports
	@set -e; export CIRCLED_BIN=$(CURDIR)/build/tsan/circled \
	  CIRCLE_GOLDEN_DIR=$(CURDIR)/tests/golden \
	  TSAN_OPTIONS="log_path=$(CURDIR)/build/tsan/reports/race suppressions=$(CURDIR)/tests/tsan.supp history_size=7"; \
	for t in $(TSAN_TESTS); do echo "== build/tsan/tests/$$t (TSan)"; build/tsan/tests/$$t; done; \
	echo "== tests/py/test_grpc.py, build/tsan/circled"; \
	$(VENV_PY) -m pytest -q tests/py/test_grpc.py; \
	echo "== soak, 20 s, build/tsan/circled"; \
	$(VENV_PY) tests/load/soak.py --duration 20 --no-rss --circled build/tsan/circled
	@if ls build/tsan/reports/race* >/dev/null 2>&1; then \
	  cat build/tsan/reports/race*; echo "tsan: data races reported (above)"; exit 1; fi; \
	echo "tsan: no data race reported"

.PHONY: valgrind deps-valgrind
deps-valgrind:
	@$(MAKE) --no-print-directory deps-c APT_PKGS="valgrind"

valgrind: all $(TEST_BINS) deps-py | deps-valgrind
	@set -e; export CIRCLED_BIN=$(CURDIR)/$(BUILD)/circled CIRCLE_GOLDEN_DIR=$(CURDIR)/tests/golden \
	  CK_TIMEOUT_MULTIPLIER=30; \
	for t in $(filter-out %/test_http,$(TEST_BINS)); do echo "== valgrind $$t"; $(VALGRIND) $$t; done
	@echo "valgrind-soak-token" > $(BUILD)/valgrind-soak.key
	$(VENV_PY) tests/load/soak.py --duration $(VALGRIND_SECONDS) --connections 8 --no-rss \
	  --circled $(BUILD)/circled --wrapper "$(VALGRIND)" --api-key-file $(BUILD)/valgrind-soak.key \
	  --json-out $(BUILD)/valgrind-soak.json

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/circle
	install -m 755 $(BUILD)/circled $(DESTDIR)$(PREFIX)/bin/circled
	install -m 644 $(BUILD)/libcircle.a $(DESTDIR)$(PREFIX)/lib/libcircle.a
	install -m 755 $(BUILD)/libcircle.so $(DESTDIR)$(PREFIX)/lib/libcircle.so.0
	ln -sf libcircle.so.0 $(DESTDIR)$(PREFIX)/lib/libcircle.so
	install -m 644 include/circle/*.h $(DESTDIR)$(PREFIX)/include/circle/
	sed -e 's|@PREFIX@|$(PREFIX)|g' circle.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/circle.pc

clean:
	rm -rf $(BUILD)/obj $(BUILD)/pic $(BUILD)/tests $(BUILD)/bench $(BUILD)/san $(GEN_DIR) \
	       $(BUILD)/circled $(BUILD)/libcircle.a $(BUILD)/libcircle.so
