"""``python -m train_clip.pretrained --images DIR --n 64``: feature agreement of the converted FID Inception."""

from train_clip.pretrained.fid_inception import main

main()
