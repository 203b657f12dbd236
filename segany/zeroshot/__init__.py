"""Zero-shot transfer tasks of the SAM paper (section 7), with their metrics computed exactly:

* :mod:`.edges` and :mod:`.edge_eval`: edge detection from a 16x16 point grid, scored with the
  BSDS500 benchmark's ODS / OIS / AP / R50 (section 7.2, appendix D.2);
* :mod:`.proposals`: object proposals, class-agnostic mask AR@K (section 7.3, appendix D.3);
* :mod:`.instances`: instance segmentation from detector boxes with one refinement pass, COCO
  mask AP (section 7.4, appendix D.4);
* :mod:`.coco_eval`: the pycocotools wrappers both use (numbers unchanged);
* :mod:`.common`: results files, Markdown tables with the paper's numbers, per-image resume.

The commands are ``segany zeroshot edges|proposals|instances`` (see docs/zeroshot.md).
"""
