"""diffaudit.app: the Streamlit app (entry script Home.py, pages/). It reads results; it never computes probes."""
