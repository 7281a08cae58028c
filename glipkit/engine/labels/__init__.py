"""Jobs over finished label tables: export to other trainers' formats, the HTML gallery, the quality report."""
