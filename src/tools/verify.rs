//! `walrcv verify DIR`: checks a whole archive offline.
