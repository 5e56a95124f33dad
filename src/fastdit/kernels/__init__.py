"""Op providers, one folder each. Importing a folder registers its providers declaratively:
implementations (and the libraries they need) are imported on first use."""
