# ctest driver (cmake -P) of the install_package test: install the current build into a fresh
# prefix, build tests/install against the installed package, and check that its greedy tokens
# equal those of the same program built in-tree (install_probe).
#   -DBUILD_DIR -DSOURCE_DIR -DWORK_DIR -DPROBE -DMODEL -DGENERATOR -DCXX_COMPILER
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
run("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
foreach(file include/mxmoe/engine/mxmoe.h lib/cmake/mxmoe/mxmoeConfig.cmake)
  if(NOT EXISTS ${WORK_DIR}/prefix/${file})
    message(FATAL_ERROR "the install lacks ${file}")
  endif()
endforeach()
run("configuring tests/install" ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
run("building tests/install" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)

run("the in-tree program" ${PROBE} ${MODEL})
string(STRIP "${output}" expected)
separate_arguments(expected_ids UNIX_COMMAND "${expected}")
list(LENGTH expected_ids n)
if(NOT n EQUAL 8)
  message(FATAL_ERROR "the in-tree program printed '${expected}', not 8 token ids")
endif()
run("the program built against the installed package" ${WORK_DIR}/build/embed_mxmoe ${MODEL} ${expected_ids})
message(STATUS "installed package: tokens ${expected}, as in-tree")
