"""``python -m towers --images DIR --n 64``: feature agreement of the converted FID Inception."""

from towers.fid_inception import main

main()
