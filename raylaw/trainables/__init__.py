"""Built-in training workloads (Ray Tune function trainables) that raylaw can search over."""
