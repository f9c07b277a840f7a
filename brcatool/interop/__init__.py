"""Working with the rest of the field: CLAM/TRIDENT/STAMP feature import, QuPath GeoJSON out and in.

Modules: ``h5features`` (one reader per foreign feature-file layout, a registry), ``importer`` (the
``import-features`` stage), ``geojson`` (QuPath FeatureCollections: write tiles and annotations, read
ROI polygons, point-in-polygon).
"""
