"""Trained models at work, with no training code behind them: :func:`~bicycle.inference.model.load` and
:class:`~bicycle.inference.model.Model` (translate, encode, interpolate), sampling and ``bicycle sample``
(:mod:`.sample`), ``bicycle eval`` (:mod:`.evaluate`, :mod:`.metrics`, :mod:`.perceptual`) and the aggregate
posterior (:mod:`.posterior`)."""
