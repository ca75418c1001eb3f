# The one source transformation of the CUDA emulation (tests/cuda_emu/README.md), applied to src/cuda/*.cu:
#   kernel<<<grid, block, smem, stream>>>(args)  ->  emu::launch([](auto... a_) { kernel(a_...); }, "kernel", grid, block, smem, stream)(args)
#   extern __shared__ T name[];                  ->  T *name = (T *)emu::dynamic_smem();
# A kernel name is an identifier with at most one level of template arguments; <<< and >>> stay on one line.
s/([A-Za-z_][A-Za-z0-9_]*(<[^<>]*>)?)<<</emu::launch([](auto... a_) { \1(a_...); }, "\1", /g
s/>>>\(/)(/g
s/extern __shared__ ([A-Za-z_][A-Za-z0-9_ ]*[A-Za-z0-9_]) +([A-Za-z_][A-Za-z0-9_]*)\[\];/\1 *\2 = (\1 *)emu::dynamic_smem();/
