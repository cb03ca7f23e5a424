"""The service over both products: reconstructions served next to video indexes (``/api/scenes``,
the three.js viewer), reconstructions of a search hit's clip, and the ``tomeray serve`` command that
puts them together. It builds on both products; neither imports it."""
