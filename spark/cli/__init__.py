"""Console scripts: `spark-worker`, `spark-edge` and the operator's `spark`."""
