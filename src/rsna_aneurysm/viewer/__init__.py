"""The viewer: a streamlit app over a data folder, its predictions and heatmaps (``rsna-aneurysm view``).

``data`` (series access), ``predictions`` (the prediction folder and heatmaps), ``hotspots``, ``figures`` (pure
plotly builders), ``state`` (app logic without streamlit), ``live`` (the run button), ``panels`` + ``app`` (the
streamlit script), ``server`` / ``browser`` / ``cli`` (starting it, checking it in Chromium). See docs/viewer.md.
"""
