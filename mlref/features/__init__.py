"""Feature computation, the Feast store, and the transform shared by training and serving."""
