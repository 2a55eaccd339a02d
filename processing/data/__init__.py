"""Offline data tools: WikiWeb2M TFRecord reader, sample data, image fetcher, embedding-cache builder,
BPE training and generation metrics. Never copied into a Hub folder."""
