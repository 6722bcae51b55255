__version__ = "0.1.0"


def load(model_dir):
    "A trained model directory, ready to recommend by the shop's ids: `recbook.load(DIR).recommend([...])` (chapter 4)."
    from recbook.training import load_trained

    return load_trained(model_dir)
