# iisand build. `make` builds build/iisan on the CPU; `make test` builds the
# test programs under ASan + UBSan and runs them; `make CUDA=1` adds the GPU
# backend (kernels/cuda/).
CC      ?= cc
ARCH    ?= native
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
CPPFLAGS+= -I. -I/usr/include/x86_64-linux-gnu/openblas-pthread -D_GNU_SOURCE
BASEFLAGS = -std=c11 -march=$(ARCH) -fno-math-errno $(WARN)
LDLIBS  := -lopenblas -llmdb -ljansson -lmicrohttpd -luv -ljpeg -lpng -lhiredis -lcrypto -lm -lpthread

# CPU and CUDA builds live apart, since -DIISAN_CUDA changes every object
ifeq ($(CUDA),1)
BUILD   ?= build/cuda
else
BUILD   ?= build
endif

# the build's identity (server/version.c: iisan --version, iisan_build_info), recompiled
# on every build so that it follows the checkout
.DEFAULT_GOAL := all
VERSION := 0.10.0
GIT_DESCRIBE := $(shell git describe --always --dirty --tags 2>/dev/null || echo unknown)
VERSION_FLAGS = -DIISAN_VERSION='"$(VERSION)"' -DIISAN_GIT_DESCRIBE='"$(GIT_DESCRIBE)"'
$(BUILD)/obj/server/version.o $(BUILD)/tobj/server/version.o: CPPFLAGS += $(VERSION_FLAGS)
$(BUILD)/obj/server/version.o $(BUILD)/tobj/server/version.o: FORCE
.PHONY: FORCE
FORCE:

LIB_SRC := $(wildcard kernels/*.c kernels/cpu/*.c core/*.c store/*.c proto/*.c)
CLI_SRC := $(wildcard server/*.c cluster/*.c)
TEST_SRC:= $(wildcard tests/test_*.c)
BENCH_SRC:= $(wildcard tests/bench_*.c)

OBJ     := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TOBJ    := $(LIB_SRC:%.c=$(BUILD)/tobj/%.o) $(filter-out $(BUILD)/tobj/server/main.o,$(CLI_SRC:%.c=$(BUILD)/tobj/%.o))
TESTS   := $(TEST_SRC:tests/%.c=$(BUILD)/test/%)
SCRIPTS := $(wildcard tests/test_*.sh)
BENCHES := $(BENCH_SRC:tests/%.c=$(BUILD)/%)

SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

ifeq ($(CUDA),1)
ifeq ($(wildcard kernels/cuda/cuda.mk),)
$(error CUDA=1: kernels/cuda/cuda.mk is missing)
endif
include kernels/cuda/cuda.mk
endif

.PHONY: all test test-coretype bench-train bench-gemm bench-ops bench-encode bench-gpu bench-serve bench-tpme fuzz run clean format
.SECONDARY:
all: $(BUILD)/iisan

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(BASEFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tobj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(BASEFLAGS) -O1 -g $(SAN) -MMD -MP -c $< -o $@

$(BUILD)/libiisan.a: $(OBJ)
	ar rcs $@ $^

$(BUILD)/iisan: $(CLI_OBJ) $(BUILD)/libiisan.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libiisan.a $(LDLIBS)

$(BUILD)/test/%: tests/%.c $(TOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(BASEFLAGS) -O1 -g $(SAN) -o $@ $< $(TOBJ) $(LDLIBS)

$(BUILD)/bench_%: tests/bench_%.c $(BUILD)/libiisan.a
	$(CC) $(CPPFLAGS) $(BASEFLAGS) $(CFLAGS) -o $@ $< $(BUILD)/libiisan.a $(LDLIBS)

# the scripts drive a sanitized build of the binary (daemon included): ASan + UBSan reports
# in its output or the daemon's log fail them
SAN_BIN := $(BUILD)/asan/iisan
$(SAN_BIN): $(LIB_SRC) $(CLI_SRC) $(wildcard */*.h kernels/*/*.h)
	$(MAKE) BUILD=$(BUILD)/asan CFLAGS='-O1 -g $(SAN)' $@

# every benchmark is compiled too (bench_train runs in the tests), so none rots unbuilt
test: $(TESTS) $(BUILD)/iisan $(BENCHES) $(SAN_BIN)
	@IISAN_BIN=$(SAN_BIN) tests/run_tests.sh $(TESTS) $(SCRIPTS)

# the C test programs once more with OpenBLAS forced to another core type (other GEMM
# kernels): a test that holds only on the host's kernels fails here (docs/gpu.md)
test-coretype: $(TESTS)
	@tests/run_coretype.sh $(TESTS)

# the unit, gradient, golden and store tests once more without sanitizers,
# under valgrind (memcheck, leaks fatal). Built for x86-64-v2: valgrind 3.19 does not decode
# AVX-512, which -march=native emits on such CPUs (SIGILL); OpenBLAS picks its kernels from
# the CPU valgrind reports, so it needs no such care.
VG_TESTS := test_ops test_pool test_golden test_golden_versa test_model test_safetensors test_store test_dataset test_image test_serve_units test_repo
valgrind:
	$(MAKE) BUILD=build/vg SAN= ARCH=x86-64-v2 $(VG_TESTS:%=build/vg/test/%)
	OPENBLAS_NUM_THREADS=1 TEST_WRAPPER="valgrind -q --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite" \
	  tests/run_tests.sh $(VG_TESTS:%=build/vg/test/%)

bench-train: $(BUILD)/bench_train
	tests/bench_train.sh $(BUILD)/bench_train
	@if grep -q avx512_bf16 /proc/cpuinfo; then $(BUILD)/bench_train bf16; \
	 else echo "bench-train bf16: not run (this CPU has no AVX512-BF16)"; fi
	$(BUILD)/bench_train versa

# the training step's SAN and head GEMMs one shape at a time, fp32 and bf16 (developers)
bench-gemm: $(BUILD)/bench_gemm
	$(BUILD)/bench_gemm

# the step's largest non-GEMM ops one at a time, operands in cache and out of it (developers)
bench-ops: $(BUILD)/bench_ops
	$(BUILD)/bench_ops

# all-MiniLM-L6-v2: iisan encode vs Hugging Face on Scientific titles (developers: needs torch)
bench-encode: $(BUILD)/iisan
	tests/bench_encode.sh $(BUILD)/iisan

# the GPU check (needs a CUDA device): CUDA build, CUDA tests, GPU training benchmark
bench-gpu:
	deploy/bench_gpu.sh

run: $(BUILD)/iisan
	deploy/run_main.sh

# the spec's TPME table: IISAN, IISAN text-only and SASRec-ID trained on the same work (the main
# job's Scientific store with MiniLM states), raw figures beside the normalised ones
bench-tpme: $(BUILD)/iisan
	deploy/bench_tpme.sh

# the serving daemon under wrk on loopback (docs/operations.md): last line JSON
bench-serve: $(BUILD)/iisan
	deploy/bench_serve.sh

# libFuzzer target of the API's request parsing (clang); tests/test_serve.sh runs it briefly
FUZZ_CC ?= clang
fuzz: $(BUILD)/fuzz_request
$(BUILD)/fuzz_request: tests/fuzz_request.c proto/request.c proto/request.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -o $@ tests/fuzz_request.c proto/request.c -ljansson

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj $(BUILD)/tobj -name '*.d' 2>/dev/null)
