"""Which trials count and which is best: reading results, statistics (intervals, ties), the confirmation's evidence,
what earlier searches give a new one (warm start). Imports only search.experiment."""
