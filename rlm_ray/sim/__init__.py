"""rlm_ray.sim"""
