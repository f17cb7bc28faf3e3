# CMake generated Testfile for 
# Source directory: /work/main/module
# Build directory: /work/main/build/module
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
