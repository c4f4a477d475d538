"""Statistics monitor callback (being written)."""

import keras


class StatsMonitor(keras.callbacks.Callback):
    pass
