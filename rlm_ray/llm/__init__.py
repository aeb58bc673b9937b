"""rlm_ray.llm"""
