"""handler-cli: the intake desk of a 3D-modelling studio, one composable step at a time."""

__version__ = "0.1.0"
