# The CUDA backend, included by the Makefile when CUDA=1. Builds kernels/cuda/*.cu with nvcc
# into $(BUILD)/obj/ and adds the objects to the library and to the test programs' objects
# (the test builds link them unsanitised: nvcc objects take no -fsanitize).
#   make CUDA=1 CUDA_ARCH=sm_80      another GPU generation (default sm_90: H100 / H200)
#   make CUDA=1 CUDA_HOME=/opt/cuda  another toolkit
# Only a pattern rule is defined here, so the Makefile's default goal stays `all`.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH ?= sm_90
# --fmad=false: no multiply-add contraction, like the CPU backend's ISO C build, so the
# elementwise kernels give the CPU's results bit for bit (cuBLAS is not affected).
NVCCFLAGS ?= -O2 -g -lineinfo
NVCC_ALL  := -std=c++17 -arch=$(CUDA_ARCH) --fmad=false -Xcompiler -Wall,-Wextra \
             -Xcompiler -Wno-unused-parameter,-Werror -Werror all-warnings

CUDA_SRC  := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ  := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)

OBJ      += $(CUDA_OBJ)
TOBJ     += $(CUDA_OBJ)
CPPFLAGS += -DIISAN_CUDA
LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -I. $(NVCC_ALL) $(NVCCFLAGS) -MMD -MP -c $< -o $@
