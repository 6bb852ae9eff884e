"""The served index and everything that answers a query over it.

The published index version (one manifest, one atomic publish) holds the FAISS vectors, the doc-id map, the
term index and, for a cascade, its second-stage vectors; one concept per module:

- building it (the nightly rebuild): ``index_selection`` (which documents are worth indexing), ``corpus``
  (those documents with the features the document tower reads), ``embedding`` (batch document embedding to
  disk), ``index`` (the FAISS index: flat or IVF-PQ, top-k, radius and subset search), ``terms`` (posting
  lists of the documents' terms as Roaring bitmaps), ``index_validation`` (ANN recall against an exact oracle
  before publishing), ``index_store`` (manifest, staging, publish, load, rollback);
- querying it: ``query`` (the query language: ``(term ...)``, ``(and ...)``, ``(or ...)``, ``(not ...)``,
  ``(nn ...)``), ``engine`` (Boolean operators and the constrained nn operator), ``hybrid`` (plain text to
  the paper's hybrid expression), ``selection`` (when to skip the nn branch), ``ranking`` (a learned second
  stage with the cosine as a feature), ``request`` and ``errors`` (requests, candidates, what can go wrong),
  ``retriever`` (query text + searcher -> candidates, in process) and ``service`` (the same over HTTP).

Nothing is imported here: importing the package is free.
"""
