"""How the agent sees and scores a model: workloads, (later) the Gymnasium env and rewards."""
