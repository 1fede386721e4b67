"""The `ernie-cls` console script: the top layer, parsing flags into each stage's config and calling the stage."""
