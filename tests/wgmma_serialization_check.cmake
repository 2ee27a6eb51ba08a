# ctest driver (cmake -P) of gemm_wgmma_not_serialized: compiles kernels/w8a16_gemm.cu for sm_90a
# with ptxas's notes on and fails where ptxas serialized wgmma instructions (its C7510-C7513 notes).
# It does so silently otherwise: an edit of the register-A mainloop that let ptxas move fragment
# writes across the wgmma groups in flight once ran the GEMM at 0.82x.
#   -DNVCC -DSOURCE_DIR -DWORK_DIR
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(
  COMMAND ${NVCC} -std=c++20 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Xptxas -v
          -I${SOURCE_DIR} -c ${SOURCE_DIR}/kernels/w8a16_gemm.cu -o ${WORK_DIR}/w8a16_gemm.o
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "nvcc failed (${rc}):\n${out}\n${err}")
endif()
if(NOT "${out}${err}" MATCHES "Compiling entry function '[^']*rs_gemm_kernel")
  message(FATAL_ERROR "ptxas printed nothing for the rs_gemm_kernel instances:\n${out}\n${err}")
endif()
string(REGEX MATCHALL "[^\n]*wgmma[^\n]*serialized[^\n]*" serialized "${out}${err}")
if(serialized)
  string(REPLACE ";" "\n" serialized "${serialized}")
  message(FATAL_ERROR "ptxas serialized wgmma instructions:\n${serialized}")
endif()
