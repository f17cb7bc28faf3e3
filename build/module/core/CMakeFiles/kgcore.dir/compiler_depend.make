# Empty compiler generated dependencies file for kgcore.
# This may be replaced when dependencies are built.
