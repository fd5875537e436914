"""mgdata: the library behind the `mgllava_data` DAG.

Nothing in this package imports Airflow at module level, so every stage can be tested and run on its own.
"""
