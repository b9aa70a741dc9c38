"""The job side: the fair queue, the durable store, and the runner that feeds the model service.

Nothing here imports the Discord side; it talks to it through the runner's `JobPresenter` protocol.
"""
