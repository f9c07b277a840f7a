"""The one synthetic-data factory: TCGA-like cohorts for the demo, the tests and the benchmarks."""
