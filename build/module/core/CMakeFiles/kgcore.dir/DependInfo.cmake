
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/module/core/kgc_config.c" "module/core/CMakeFiles/kgcore.dir/kgc_config.c.o" "gcc" "module/core/CMakeFiles/kgcore.dir/kgc_config.c.o.d"
  "/work/main/module/core/kgc_keys.c" "module/core/CMakeFiles/kgcore.dir/kgc_keys.c.o" "gcc" "module/core/CMakeFiles/kgcore.dir/kgc_keys.c.o.d"
  "/work/main/module/core/kgc_price.c" "module/core/CMakeFiles/kgcore.dir/kgc_price.c.o" "gcc" "module/core/CMakeFiles/kgcore.dir/kgc_price.c.o.d"
  "/work/main/module/core/kgc_token.c" "module/core/CMakeFiles/kgcore.dir/kgc_token.c.o" "gcc" "module/core/CMakeFiles/kgcore.dir/kgc_token.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
