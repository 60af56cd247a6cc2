"""The memory planner: model shapes, the estimate, and its validation against measured runs."""
