"""Who answers: the local engine or a remote OpenAI-compatible server, behind one surface."""
