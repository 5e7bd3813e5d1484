"""fastcnn"""
