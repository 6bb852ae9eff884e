"""Serving side of embedding-based retrieval and the plain functions of the nightly index rebuild.

One concept per module: ``errors`` (what can go wrong at query time), ``request`` (a retrieval request and
its candidates), ``corpus`` (which documents with which features go into the index), ``embedding`` (batch
document embedding to disk), ``validation`` (ANN recall against an exact oracle before publishing) and
``retriever`` (query text + searcher -> candidates). Nothing is imported here: importing the package is free.
"""
