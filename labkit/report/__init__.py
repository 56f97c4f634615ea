"""Reports: the analysis notebook run with papermill and exported with nbconvert, its
tables and seaborn figures, the browser check, and `labkit compare`.
"""
