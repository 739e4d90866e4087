"""The ymir protocol: env.yaml, config.yaml over the templates, index files, datasets, result files, monitor.txt."""
