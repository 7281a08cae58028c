"""The evaluation job: a GLIP over a benchmark's images through the one Predictor, scored by `glipkit.evaluation`."""
