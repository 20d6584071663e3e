"""The pure-Python part of the SkinLesionSegmentation module: no slicer, qt, vtk or ctk imports, tested with pytest."""
