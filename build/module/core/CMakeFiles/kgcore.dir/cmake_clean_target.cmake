file(REMOVE_RECURSE
  "libkgcore.a"
)
