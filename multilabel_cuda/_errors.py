class LossArgumentError(ValueError, RuntimeError):
    """Bad argument to a loss. A ValueError (as torch.nn raises for sizes and reductions) that is also
    a RuntimeError (as ATen raises for dtypes, devices and broadcasting), so either `except` works."""
