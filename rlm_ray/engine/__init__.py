"""rlm_ray.engine"""
