"""The CLDL method: the network, label distributions, the loss and the curriculum."""
