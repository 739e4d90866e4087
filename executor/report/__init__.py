"""The mining report: HTML page, JSON, TensorBoard view, and the drawing they share."""
