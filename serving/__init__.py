"""The served index and everything that answers a query over it.

The published index version (one manifest, one atomic publish) holds the FAISS vectors, the doc-id map, the
term index and, for a cascade, its second-stage vectors; one concept per module:

- publishing it (the nightly rebuild): ``terms`` (posting lists of the documents' terms as Roaring bitmaps),
  ``index_validation`` (the publish gate: ANN recall, counts, size, held-out recall against the current
  version), ``index_store`` (manifest, staging, publish, load, rollback). Which documents it holds is
  :mod:`features.index_selection` and :mod:`features.corpus`; the FAISS layer is :mod:`ann`;
- querying it: ``query`` (the query language: ``(term ...)``, ``(and ...)``, ``(or ...)``, ``(not ...)``,
  ``(nn ...)``), ``engine`` (Boolean operators and the constrained nn operator), ``hybrid`` (plain text to
  the paper's hybrid expression), ``request`` and ``errors`` (requests, candidates, what can go wrong),
  ``retriever`` (query text + searcher -> candidates, in process) and ``service`` (the same over HTTP).

Nothing is imported here: importing the package is free.
"""
