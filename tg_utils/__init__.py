"""token-geometry helpers. Every notebook's logic lives in these modules; importing the package
itself is cheap (no torch) so that set-up checks stay fast. Import submodules directly:
`from tg_utils import metrics`, `from tg_utils.data.corpus import load_corpus`."""
__version__ = "0.1.0"
