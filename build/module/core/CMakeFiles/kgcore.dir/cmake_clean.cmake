file(REMOVE_RECURSE
  "CMakeFiles/kgcore.dir/kgc_config.c.o"
  "CMakeFiles/kgcore.dir/kgc_config.c.o.d"
  "CMakeFiles/kgcore.dir/kgc_keys.c.o"
  "CMakeFiles/kgcore.dir/kgc_keys.c.o.d"
  "CMakeFiles/kgcore.dir/kgc_price.c.o"
  "CMakeFiles/kgcore.dir/kgc_price.c.o.d"
  "CMakeFiles/kgcore.dir/kgc_token.c.o"
  "CMakeFiles/kgcore.dir/kgc_token.c.o.d"
  "libkgcore.a"
  "libkgcore.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/kgcore.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
